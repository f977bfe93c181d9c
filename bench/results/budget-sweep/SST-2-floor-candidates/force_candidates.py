"""Experiment: the >=100x search's export picked among --candidates even though its top_prob_ratio
(2.87, skewed by the budget's penalty) is above the undecided threshold."""
import sys
import nni_adabert.workflows.search as search
from nni_adabert.cli import main
search.UNDECIDED_RATIO = 100.0  # always pick among candidates
sys.exit(main(sys.argv[1:]))
