import sys

from launch.gpu.gpu import main

sys.exit(main())
