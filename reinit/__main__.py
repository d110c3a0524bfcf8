from reinit.cli import main

main()
