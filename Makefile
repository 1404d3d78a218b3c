# The two commands of the README:
#   make demo   set everything up, then run the main job (`omega demo`)
#   make test   set everything up, then run the whole test suite
.PHONY: setup demo test

setup:
	@scripts/setup

demo: setup
	.venv/bin/omega demo $(ARGS)

test: setup
	scripts/services
	.venv/bin/python -m pytest $(ARGS)
