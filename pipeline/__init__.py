"""pocketkd: distil a large regressor into a phone-sized student and prove it on the target CPU."""

__version__ = "0.1.0"
