import sys

from opentr_pipeline.cli.main import main

sys.exit(main())
