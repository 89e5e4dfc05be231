# Two commands for a fresh machine (see README):
#   make run    install everything, then start the bot on its default config
#   make test   install everything, then run the full check (lint, types, tests)
.PHONY: install run test check bench clean

install:
	scripts/install

run: install
	.venv/bin/voicebot-pbx serve $(if $(CONFIG),--config $(CONFIG),) $(if $(RECORD),--record-audio,)

test: install
	scripts/check

check:
	scripts/check

bench: install
	.venv/bin/python bench/bench_transport.py
	.venv/bin/python bench/bench_turns.py

# The virtualenv and the caches go; the call records and recordings (.cache/state, the
# default state_dir) never do.
clean:
	rm -rf .venv
	if [ -d .cache ]; then find .cache -mindepth 1 -maxdepth 1 ! -name state -exec rm -rf {} +; fi
