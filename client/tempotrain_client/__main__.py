import sys

from tempotrain_client.cli import main

sys.exit(main())
