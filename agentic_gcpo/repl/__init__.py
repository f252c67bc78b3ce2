"""`agentic-gcpo repl` and `agentic-gcpo show`: watch the agent work, and replay saved trajectories.

session.py     the model, chat format, tools, sandbox and agent loop of one REPL (training's own)
commands.py    the /commands: parsing, help, dispatch
app.py         the terminal loop (prompt_toolkit: history, arrow keys, completion, Ctrl-C / Ctrl-D)
transcript.py  the conversation view, printed live from agent-loop events or replayed from a record
tokens_view.py the token view: every token coloured by source, with its loss mask and logprob
records.py     saved trajectories (a run's samples.jsonl, an eval's trajectories.jsonl) read back
style.py       terminal colours (off for pipes and when NO_COLOR is set)
cli.py         the two subcommands, added to the main CLI by `add_repl_parsers`
"""
