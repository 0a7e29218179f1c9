"""What tests share: servers, clients, runtimes and checkpoints they start or make. Test modules
import from here, never from one another (and bench/ imports from here too)."""
