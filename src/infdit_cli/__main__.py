from infdit_cli.cli import main

main()
