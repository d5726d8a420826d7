"""The accelerator check, run from the repository root as `python -m tests.device.gpu_check`."""
