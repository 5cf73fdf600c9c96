"""Acquisition: `plan` (what to acquire), `sequence` (frames as useq events), `mda_engine` (the
pymmcore-plus engine), `prepare` (before the first frame), `sinks` (file and subscribers),
`events` (progress), `runner` (`Acquisition`: all of it through `core.mda.run`)."""
