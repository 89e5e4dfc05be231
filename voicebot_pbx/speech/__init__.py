"""Speech in and out: the models and the pure logic around them.

Owns VAD (``vad``: silero ONNX), end-of-turn (``turns``: pure ``TurnTaker``), the inbound
clock (``inbound_clock``: missing frames are silence; pure), speech-to-text: the engine-neutral
types and declared capabilities (``stt``), the one engine factory (``stt_load``), Whisper
batched across calls on its own thread (``whisper``, its decode checks in
``whisper_guard``) and Vosk streaming (``vosk_stt``); Piper TTS
(``tts``), line-echo gating (``echo``), the process-wide engines and their thread pool
(``engines``) and the CPU policy for inference (``cpu``).

May import: ``voicebot_pbx.config``, ``voicebot_pbx.audio``, ``voicebot_pbx.models``. Never
``pbx``, ``call``, ``answers`` or ``ops``. ``turns``, ``inbound_clock`` and ``echo`` are pure.
"""
