"""Plumbing every package uses: errors, atomic writes, content digests, seeding, hardware, stop signals, setting checks, pictures."""
