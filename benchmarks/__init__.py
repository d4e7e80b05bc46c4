"""medfl's benchmarks (scripts; a regular package so that another distribution's top-level ``benchmarks``,
such as the one Opacus 1.6 installs with the bench extra, cannot shadow ``benchmarks.fuzz``)."""
