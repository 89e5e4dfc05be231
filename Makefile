# Two commands for a fresh machine (see README):
#   make run    install everything, then start the bot on its default config
#   make test   install everything, then run the full check (lint, types, tests)
.PHONY: install run test check bench clean

install:
	scripts/install

run: install
	.venv/bin/voicebot-pbx serve $(if $(CONFIG),--config $(CONFIG),)

test: install
	scripts/check

check:
	scripts/check

bench: install
	.venv/bin/python bench/bench_transport.py
	.venv/bin/python bench/bench_turns.py

clean:
	rm -rf .venv .cache
