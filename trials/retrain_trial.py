"""NNI trial: retrain an exported AdaBERT architecture (or a seeded random one) from
fresh weights on a task, with KD from the task's cached teacher.

    python trials/retrain_trial.py --arch runs/nni/searched/SST-2 --task SST-2
    python trials/retrain_trial.py --arch random:3 --task SST-2

See nni_adabert/trial.py for what it does and reports; `--help` lists the settings.
"""

import sys

from nni_adabert.trial import main

if __name__ == "__main__":
    sys.exit(main("retrain"))
