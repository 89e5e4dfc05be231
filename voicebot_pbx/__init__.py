"""voicebot-pbx: an on-prem voice bot for Asterisk and FreeSWITCH."""

__version__ = "0.1.0"
