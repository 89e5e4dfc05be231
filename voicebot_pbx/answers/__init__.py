"""What the bot answers: the brains behind a turn.

Owns the ``Dialogue`` protocol and the rule brain (``dialogue``), the Rasa client
(``rasa``) and managed Rasa server (``rasa_server``), the fall-back chain (``fallbacks``),
the one dialogue factory (``factory``), the spoken-number normaliser (``normalize``), and
the grounded LLM path: ``knowledge`` (BM25 passages), ``grounding`` (the pure post-check),
``llm_prompt``, ``llm_local`` (errors, engine protocol, llama.cpp), ``llm_http``
(OpenAI-compatible endpoint pool) and ``llm`` (the answerer).

May import: ``voicebot_pbx.config``, ``voicebot_pbx.models``, ``speech`` (sentence
splitting, thread priority). Never ``pbx``, ``call`` or ``ops``. ``dialogue``, ``normalize``,
``knowledge``, ``grounding`` and ``llm_prompt`` are pure.
"""
