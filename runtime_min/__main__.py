from runtime_min.cli import main

main()
