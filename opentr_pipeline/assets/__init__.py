import warnings

import dagster as dg

# BackfillPolicy is marked beta; it is the documented way to put several files in one run.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
