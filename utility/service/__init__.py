"""Services: the manager facade and the services it is composed of; automatic updates."""
