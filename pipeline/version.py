"""pocketkd's version, recorded in every run's manifest, report and exported file."""

__version__ = "0.1.0"
