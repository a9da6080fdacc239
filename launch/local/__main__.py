import sys

from launch.local.local import main

sys.exit(main())
