"""Infrastructure: settings from the environment, JSON logging, the database connection and
bootstrap, the embedded NX-27017 server (launcher, supervisor, child-process entry), and the
terminal progress bar. Imports nothing of the other layers."""
