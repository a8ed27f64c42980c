# MCPFAST_DEBUG is 1 in a debug build (MCPFAST_DEBUG_BUILD=1 at build time) and 0
# otherwise; the C compiler drops ``if MCPFAST_DEBUG:`` blocks from release builds, so
# invariant checks cost nothing there.
cdef extern from *:
    """
    #ifndef MCPFAST_DEBUG
    #define MCPFAST_DEBUG 0
    #endif
    """
    const int MCPFAST_DEBUG

# Visible from Python: tests check that a debug build is what they run against.
DEBUG_BUILD = bool(MCPFAST_DEBUG)
