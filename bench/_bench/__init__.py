"""The parts of ``bench/run.py``: options, child processes, measurements, profiling, report."""
