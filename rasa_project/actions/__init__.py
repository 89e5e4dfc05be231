"""Rasa custom actions for the Northwind Energy line (rasa-sdk 3.6, Python 3.10 Rasa venv).

``voicebot-pbx serve`` starts ``python -m rasa_sdk --actions actions`` with cwd ``rasa_project``
and supervises it (voicebot_pbx/answers/action_server.py). Back ends: ``backend.py``.
"""
