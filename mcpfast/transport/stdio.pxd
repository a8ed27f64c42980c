# The compiled build of stdio.py (see setup.py): no C declarations.  Its classes stay
# Python classes; compiling only makes the per-message code (send, route, read, deliver)
# C instead of bytecode.
