"""The `python` tool: run code in the trajectory's sandbox session, notebook style.

Written against the public registry API, exactly as a user would write a tool. Variables persist
between calls of one trajectory because every call of that trajectory uses the same session.
"""

from agentic_gcpo.tool_registry import ToolContext, ToolResult, tool


# timeout_s=None: the sandbox already enforces wall/CPU/memory limits and kills the worker; a
# registry timeout on top would abandon a thread that is still talking to the sandbox.
@tool(timeout_s=None)
def python(code: str, ctx: ToolContext) -> ToolResult:
    """Run Python code (SymPy available) and return what it prints and the value of its last line.

    Variables persist between calls within one problem.

    Args:
        code: Python source to run.
    """
    if ctx.sandbox is None:
        return ToolResult("Error: no sandbox is configured for this run", is_error=True)
    result = ctx.sandbox.execute(code, ctx.session)
    return ToolResult(result.render(), is_error=not result.ok)
