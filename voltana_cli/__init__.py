"""voltana: energy-efficient LLM serving (frequency control and energy-aware routing for P/D clusters)."""

__version__ = "0.1.0"
