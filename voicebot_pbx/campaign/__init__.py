"""Outbound campaigns (issue #23): a contact list dialled within calling windows, caps and
retry rules, with a do-not-call list checked before every dial and state that survives a
restart. ``contacts`` reads the list, ``policy`` decides (pure), ``state`` keeps it
(SQLite), ``runner`` dials (async), ``cli`` is ``voicebot-pbx campaign``."""
