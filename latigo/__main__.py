from latigo.cli import main

main()
