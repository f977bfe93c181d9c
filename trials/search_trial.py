"""NNI trial: one AdaBERT search (settings from the command line, then from the tuner).

    python trials/search_trial.py --epochs 1 --train-limit 64      # standalone
    nnictl create --config config.yml                              # as NNI trials

See nni_adabert/trial.py for what it does and reports; `--help` lists the settings.
"""

import sys

from nni_adabert.trial import main

if __name__ == "__main__":
    sys.exit(main("search"))
