"""The client's version, sent as its User-Agent."""

VERSION = "0.1.0"
