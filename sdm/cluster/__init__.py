"""SLURM: checks of a submission before anything is queued, and the watcher that tells when a job has ended."""
