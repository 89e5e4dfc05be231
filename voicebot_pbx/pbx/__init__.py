"""The PBX side: everything that speaks a PBX's protocol.

Owns the pure wire codecs (``audiosocket_codec``, ``esl_codec``, ``wire``), the transports
that turn a PBX connection into a ``CallMedia`` for the session (``audiosocket``: Asterisk's
AudioSocket server; ``freeswitch`` + ``unicast``: FreeSWITCH's outbound socket with UDP
audio), call control (``ami``: Asterisk Manager client; ESL in ``freeswitch``), the paced
``speaker`` (the one owner of a call's outgoing frames), the peer allow-list (``allow``) and
a simulated Asterisk peer (``caller``) for ``voicebot-pbx call``, tests and benchmarks.

May import: ``voicebot_pbx.config``, ``voicebot_pbx.audio``. Never ``call``, ``answers``,
``speech`` or ``ops``. The codecs and ``allow`` are pure (no asyncio, no I/O).
"""
