import sys

from launch.tpu.tpu import main

sys.exit(main())
