"""CLI sub-commands other than ``train``; each module defines ``register(subparsers)``."""
