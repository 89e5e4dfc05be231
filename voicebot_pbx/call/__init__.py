"""One call, from the caller's first frame to its record.

Owns the per-call ``session`` (lifecycle, turn orchestration, timers, the end of the call),
``listener`` (caller audio -> turn events and transcripts, through ``ListenerHooks``),
``responder`` (a reply -> audio on the call's speaker), ``policy`` (pure: clarify, give up,
no-input, wrap-up, backchannels, DTMF entry) and ``prompts`` (the TTS cache and clips).

May import: ``pbx.media`` and ``pbx.speaker`` (the call's media contract), ``speech``,
``answers``, ``ops.records`` (the record it fills), ``voicebot_pbx.config``/``audio``.
"""
