"""Simulated hardware: a model of the LED firmware behind a loopback port (`firmware`), the LED
array driven through it (`led_array`), the FP camera and its renderer (`camera`) and the
microscope assembled from them (`microscope`).

Production code (devices, acquisition, recon, physics, io, model) never imports this package
(an import-linter contract); the session layer's "open a microscope" choice, `uafp simulate`,
tests and benchmarks do.
"""
