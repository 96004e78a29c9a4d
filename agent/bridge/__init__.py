"""`tibber-agent import-bridge`: the bridge's credentials and ids from its local web API.

client  HTTP GETs against the bridge (Basic auth, timeouts, errors by kind)
extract the values the agent needs, taken from the bridge's documents (pure)
pem     PEM blocks: line ends, completeness, what a hidden value looks like (pure)
inifile one section of an ini file edited in place, comments and other sections kept (pure)
files   what is written where, with which mode and group; the staged check; backups
command the command: reads, shows, writes with --write, says what to do next
"""
