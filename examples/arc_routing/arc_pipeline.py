"""ARC-Challenge through the replay engine: which recorded model should answer?

One stage, ``answer``, whose model the study chooses among the 11 RouterBench models,
for recorded accuracy against recorded dollar cost. Data: RouterBench zero-shot ARC-Challenge
(withmartian/routerbench, MIT; split by shuhao02/RouterDC), read from the repository's ``data/``.
"""

from stagewise.programs import Stage


def build():
    return Stage("answer", "prompt -> answer")
