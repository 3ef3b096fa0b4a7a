"""loganalyzer: raw system logs -> domain-adapted LLM log-analysis chatbot.

Stages (each ``python -m loganalyzer.<module>`` and ``loganalyzer <command>``): chunk, synthesize,
build-datasets, train, evaluate, score, serve, demo.
"""

__version__ = "0.1.0"
