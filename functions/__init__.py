"""Function handlers (pre/post-processing next to the interpreter) and the function declarations."""
