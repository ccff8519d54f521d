"""Making models, apart from the daemon's runtime: architectures, training options and training, detection
quality figures, evaluation on labelled folders, reports, `monitor info` and the model subcommands of the CLI.

The daemon never imports this package; it loads what training writes through `monitor.model`.
"""
