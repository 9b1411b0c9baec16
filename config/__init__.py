"""Configuration: settings from the environment, the tier taxonomy, routing rules, broker assembly."""
