import sys

from prompt_tuning.launch.tpu import main

sys.exit(main(prog="python -m launch.tpu"))
