// mkectl's pod sandbox ("pause") program: PID 1 of every pod, holding its
// namespaces. No dependencies beyond the standard library.
module mkectl.invalid/pause

go 1.22
