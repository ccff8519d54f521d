import os

# Before anything imports TensorFlow (it reads these once, at import); the user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from monitor.cli import main  # noqa: E402

raise SystemExit(main())
