# The compiled build of messages.py (see setup.py): no C declarations.  Its classes stay
# Python classes (a transport adds attributes freely); compiling only makes the
# per-message delivery code C instead of bytecode.
