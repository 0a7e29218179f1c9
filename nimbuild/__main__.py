from nimbuild.cli import main

main()
